"""Architecture warm-up: lock masks on transformer blocks and the ``[depth_schedule]`` that unlocks them."""
