"""Game adapters served through the SDK. Each module may need its own extra packages
(carracing needs the ``game`` extra); none is imported by ``import bridge``."""
