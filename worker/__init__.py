"""The worker's parts, under ``agent.py`` (which wires them) and beside ``settings.py``.

``llm_chain``: the LLM fallback chain.  ``stt_recovery``: Deepgram reconnects and the audio
held meanwhile.  ``call_policy``: what the caller hears when no TTS server can speak.
``livekit_link``: an honest exit when LiveKit cannot be reached.  ``voice_language``: the
start-up check that the voice speaks the language Deepgram hears.
"""
