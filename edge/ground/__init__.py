"""The ground station: the receiver that stores and acknowledges what nodes downlink, its id
index, and the writers of its JSON-lines and FITS files. A separate program from the node; it
shares only the records and the link's wire with it.
"""
