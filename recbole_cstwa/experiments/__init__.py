"""Experiments built on the library: comparisons of models over seeds (:mod:`.compare`, their
statistics in :mod:`.statistics`, tables and plots in :mod:`.report`, their shared records and
claims in :mod:`.run_records`, their runs in worker processes or on Ray in :mod:`.workers`), hyper-parameter searches (:mod:`.hyper`, :mod:`.trials`,
:mod:`.ray_tune`, :mod:`.exhaustive`) and the generator's oracle (:mod:`.oracle`)."""
