"""mailharness: conformance and load testing for POP3 and IMAP servers."""

__version__ = "0.1.0"
