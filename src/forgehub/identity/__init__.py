"""Identity: who is calling (tokens, sessions) and what they may do (the authorizer)."""
