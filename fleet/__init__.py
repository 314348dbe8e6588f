"""The wire contract hub and agent both speak: ids, topics, messages, signed envelopes, chunked blobs.

No network I/O lives here (the chunk receiver's files are its only I/O), so both sides and the tests
share one definition of every byte on the wire. Chunk planning (`fleet.plan`, FastCDC) is imported on its
own: only the hub cuts blobs, agents follow the signed manifest.

Import each name from its module (`fleet.messages`, `fleet.topics`, `fleet.chunks`, ...): the package itself
imports nothing, so a command that needs one module does not load them all.
"""
