"""Chatarchief: capture officials' business chats into an encrypted, tamper-evident archive."""

__version__ = "0.1.0"
