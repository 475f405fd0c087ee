"""The contract's wire and record types, shared by HTTP, WebSocket control and the store.

Standard library and msgspec only (tests/test_architecture.py holds every wing to it).
"""
