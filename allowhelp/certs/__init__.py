"""The small PKI shared by broker and agent: CA, TLS certificate, SSH keys, tokens."""
