"""Pieces shared by the drafter and verifier services and their clients: wire codecs, leases, the server host."""
