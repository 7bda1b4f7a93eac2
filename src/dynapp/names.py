"""Names of dynapp's representations and backbones, importable without torch (the CLI's help needs them at start-up).

The dict that builds them, :data:`dynapp.representations.REPRESENTATIONS`, is the reference;
``tests/test_representations.py`` checks that this tuple lists the same names in the same order.
"""

REPRESENTATIONS = ("rgb", "rgb_diff", "dynamic_image", "flow_tvl1", "flow_farneback", "flow_tvnet", "pwtp")

# The keys of :data:`dynapp.backbones.BACKBONES`, in its order (``tests/test_backbones.py`` checks it):
# a new backbone's entry lives beside its builder, its name here.
BACKBONES = ("tsm_resnet50", "x3d_xs", "x3d_m", "vit_b16", "small2d", "small_tsm", "small3d")
