"""Names of dynapp's representations, importable without torch (the CLI's help needs them at start-up).

The dict that builds them, :data:`dynapp.representations.REPRESENTATIONS`, is the reference;
``tests/test_representations.py`` checks that this tuple lists the same names in the same order.
"""

REPRESENTATIONS = ("rgb", "rgb_diff", "dynamic_image", "flow_tvl1", "flow_farneback", "flow_tvnet", "pwtp")
