"""Applications built on the library, one per ``dynapp`` command: the demo, DA frame extraction
and FLOP counting.  Nothing below ``dynapp.apps`` imports from it."""
