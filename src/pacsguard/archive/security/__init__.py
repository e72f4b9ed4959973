"""The security gate: TLS, peer authentication, policy decisions. Deny by default."""
