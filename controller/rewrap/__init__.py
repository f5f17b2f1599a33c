"""Re-wrap (and rewrite) of client-side-encrypted blobs onto a new key version, over ports only.

* ``work``: the work item (one account, container and prefix onto one key version), its validation,
  and splitting a job into items;
* ``walker``: the walk over a container both modes share (pages, bounded concurrency, checkpoint,
  one shared back-off, merge of the blobs' outcomes);
* ``strategies``: what is done to one blob (re-wrap, rewrite) and ``walker_for``, the one place that
  picks the strategy;
* ``outcomes``: the outcome enum, the problem reasons and the report;
* ``budget``: the time budget of one work item;
* ``wrapping``: local RSA-OAEP wrapping with a key version's public key.

The package's __init__ imports nothing, so that controller.ports can import the work item.
"""
