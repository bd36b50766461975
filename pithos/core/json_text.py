"""JSON request bodies as text: `loads` is json.loads, and refuses a document holding a lone
UTF-16 surrogate (a "\\udc00" escape is valid JSON but no character, and json.loads decodes
bytes with surrogatepass): such a string was stored (a server's metadata, an image's
property) and then failed every answer that encoded it as UTF-8 (a 500 for every listing of
the account), or failed its own statement (a 500 for a token request, which needs no token)."""

from __future__ import annotations

import json
from typing import Any


def loads(raw: bytes | str) -> Any:
    """The parsed document; ValueError when it is not JSON or holds a lone surrogate."""
    doc = json.loads(raw)
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string of the document holds a lone UTF-16 surrogate, which is "
                         "not text") from None
    return doc
