"""The object service: Swift semantics (containers, objects, large objects, ACLs) over the
catalog and the mapper.  The HTTP layer (pithos.api) only translates to and from it."""
