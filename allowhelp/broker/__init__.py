"""The broker: tunnel listener, registry, sessions, audit, store and web app."""
