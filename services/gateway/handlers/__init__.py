"""The gateway's use cases that span services: the accept saga and where to land after
logging in (saga.py), and many invitations at once (bulk.py)."""
