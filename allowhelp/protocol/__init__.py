"""Message formats both ends speak, without I/O (the sans-I/O core).

Shared by broker and agent, so it imports neither: the agent may import
``certs`` and ``protocol`` only, the broker ``certs`` and ``protocol``.
"""
