"""HTTP: the Swift API v1, auth endpoints and /info, as a falcon WSGI app.  Resources only
translate between HTTP and the object service; errors map to statuses in errors.py."""
