"""DIMSE front end over the archive service: an asyncio server of our own (`aio`), with
pynetdicom's PDU and DIMSE message classes as the codec; see `aio`'s docstring for why not
pynetdicom's threaded server."""
