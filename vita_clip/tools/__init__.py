"""Command-line tools beside the library, each with its ``python -m``: FLOP and MAC counts of the
video encoders (:mod:`.flops`) and parameter counts of every named model (:mod:`.params`)."""
