"""The bundle's default cluster colours: distinct for every cluster, stable by id."""

from __future__ import annotations

import itertools
import math

from geoseg.models.bundle import default_clusters


def test_every_cluster_of_an_over_clustering_head_has_its_own_colour() -> None:
    # `segment --head a` of a k = 6 model: 24 clusters; tab20 alone repeated ids 0-3 as 20-23
    colours = [c.colour for c in default_clusters(24)]
    assert len(set(colours)) == 24, colours
    nearest = min(math.dist(p, q) for p, q in itertools.combinations(colours, 2))
    assert nearest >= 20, nearest  # tab20's own closest pair is ~25 apart in RGB
    assert len({c.colour for c in default_clusters(254)}) == 254  # every id a uint8 map can hold


def test_colours_are_stable_by_id_whatever_k() -> None:
    assert [c.colour for c in default_clusters(24)][:20] == [c.colour for c in default_clusters(20)]
    assert [c.colour for c in default_clusters(80)][:24] == [c.colour for c in default_clusters(24)]
    assert [c.id for c in default_clusters(5)] == [0, 1, 2, 3, 4]
