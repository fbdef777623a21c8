"""The agent: the PC side, which dials out and asks its user before anything opens."""
