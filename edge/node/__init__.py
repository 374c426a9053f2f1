"""The node's shell: the daemon split by job, and everything around a running node.

``daemon`` is the loop that ties the jobs together; ``ingest`` takes frames off the receiver into
the bounded queue; ``pool`` and ``workers`` run the pipeline in processes and recycle them;
``engine_swap`` hot-swaps and shadows engines; ``status`` assembles the node's figures;
``control``, ``housekeeping`` and ``supervision`` talk to operators, monitors and systemd;
``assemble`` opens a pipeline from the config; ``process`` runs it on FITS files
(``astro-edge process``). Sockets, files, processes and clocks live here, never in the stages.
"""
