"""What the call does when no TTS server can speak: prepared clips and the outage policy."""
