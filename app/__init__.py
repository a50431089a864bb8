"""Application layer: the ``curation`` command line and the commands that orchestrate the
three layers below it (``curation`` domain core, ``models`` ML layer, ``pipelines`` Beam layer)."""
