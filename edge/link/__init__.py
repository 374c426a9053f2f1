"""The link from node to ground: the durable spool, the downlink that empties it, the wire
constants and sockets both ends share, the compression dictionary, CURVE keys.

Imports the records and errors of ``edge`` and nothing of the node or the ground.
"""
