"""The desktop sync client (`pithos sync`): a local folder and a remote container kept in step
for several devices at once, moving only the chunks the other side lacks.

It talks to the server over HTTP only (the Swift API with the Pithos extensions: the change
feed, hashmaps, `?missing`, `?blocks`, conditional writes); of the server's code it imports
only `pithos.core` (the chunker and the block hash).  Modules:

- `state`: the SQLite state beside the folder (last synced state, files cache, chunk index,
  the remote mirror and its cursor, the journal of intents, the remembered credentials);
- `scan`: walking the folder under the ignore rules, hashing only what changed;
- `plan`: the three-way decision per path (base, local, remote), renames included;
- `remote`: the HTTP client;
- `engine`: carrying out a plan (uploads, downloads, moves, deletes, conflicts);
- `watch`: the `--watch` loop (filesystem events plus a periodic pass).
"""
