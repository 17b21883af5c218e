"""Offline whole-call harness: a real ``AgentSession`` with no room, real speech in and out."""
