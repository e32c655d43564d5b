"""acme's entry points: modules whose ``flow`` attribute is a ``dioptra.flow.Flow``."""
