"""Operations on triangle meshes held as arrays: cropping to a cell, welding seams, removing small pieces.

A mesh here is ``vertices (V, 3) float64``, ``faces (F, 3) int64`` and ``colours (V, 3) float32`` in
[0, 1]; every function returns new arrays and drops the vertices no face uses any more.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree

from patchsplat.split.partition import Cell


def drop_unreferenced(vertices: np.ndarray, faces: np.ndarray, *per_vertex: np.ndarray) -> tuple[np.ndarray, ...]:
    """(vertices, faces, *per_vertex) keeping only the vertices some face uses, faces re-indexed."""
    used = np.zeros(len(vertices), dtype=bool)
    used[faces.reshape(-1)] = True
    new_index = np.cumsum(used) - 1
    return (vertices[used], new_index[faces].astype(np.int64), *(values[used] for values in per_vertex))


def crop_to_cell(vertices_aligned: np.ndarray, faces: np.ndarray, cell: Cell) -> np.ndarray:
    """Boolean mask of the faces whose centroid's aligned (x, y) lies in the half-open ``cell``.

    Cells of a split tile the ground without overlap, so cropping every patch's mesh to its own
    core cell assigns each face position to exactly one patch.
    """
    if len(faces) == 0:
        return np.zeros(0, dtype=bool)
    centroids = vertices_aligned[faces].mean(axis=1)
    return cell.contains(centroids[:, :2])


def lattice_edge_keys(lattice: np.ndarray, tolerance: float = 1e-4) -> np.ndarray:
    """(V, 4) int64 key of the lattice edge each vertex lies on, -1 rows for vertices on none.

    ``lattice`` (V, 3) are vertex positions in lattice units (aligned frame / voxel size). Marching
    cubes puts every vertex on an edge between two neighbouring voxel centres: two coordinates are
    integers, the third is between ``floor`` and ``floor + 1`` along ``axis``. The key is those
    integers, the floor, and the axis (3 for a vertex exactly on a voxel centre).
    """
    nearest = np.round(lattice)
    on_line = np.abs(lattice - nearest) < tolerance
    count = on_line.sum(axis=1)
    keys = np.full((len(lattice), 4), -1, dtype=np.int64)
    corner = count == 3
    keys[corner, :3], keys[corner, 3] = nearest[corner], 3
    edge = count == 2
    axis = np.argmin(on_line[edge], axis=1)
    coords = nearest[edge].copy()
    coords[np.arange(len(axis)), axis] = np.floor(lattice[edge][np.arange(len(axis)), axis])
    keys[edge, :3], keys[edge, 3] = coords, axis
    return keys


def weld_seams(vertices: np.ndarray, faces: np.ndarray, colours: np.ndarray, piece: np.ndarray, lattice: np.ndarray,
               lattice_id: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Merge the near-duplicate open-boundary vertices that separately meshed pieces share along their borders.

    ``piece`` (V,) names the piece each vertex came from, ``lattice_id`` (V,) the lattice it was
    fused on (pieces with the same voxel size and frame share one) and ``lattice`` (V, 3) its position
    in that lattice's units (aligned frame / voxel size).

    * Same lattice: the pieces' surfaces cross the same lattice edges along the border, each making
      "the same" marching-cubes vertex at a slightly different place on the edge (their TSDFs differ a
      little). Boundary vertices of different pieces on one edge are merged: the seam closes wherever
      the pieces agree on the topology.
    * Elsewhere (pieces on different lattices, or surfaces that cross different edges because the
      pieces disagree by about a voxel): boundary vertices of different pieces that are mutual nearest
      neighbours within ``tolerance`` are merged. Farther apart, the seam stays open.

    Merged vertices take their mean position and colour; faces that collapse or repeat are dropped.
    Returns (vertices, faces, colours, {"on_lattice_edges": n, "by_distance": n}), counting the
    vertices merged away.
    """
    counts = {"on_lattice_edges": 0, "by_distance": 0}
    if len(faces) == 0:
        return vertices, faces, colours, counts
    boundary = boundary_vertices(faces, len(vertices))
    labels = np.full(len(vertices), -1, dtype=np.int64)

    keys = lattice_edge_keys(lattice)
    index = np.flatnonzero(boundary & (keys[:, 3] >= 0))
    if len(index) >= 2:
        _, group = np.unique(np.column_stack([lattice_id[index], keys[index]]), axis=0, return_inverse=True)
        group = group.reshape(-1)
        # Only groups holding vertices of more than one piece are seams.
        pieces_in_group = np.unique(np.column_stack([group, piece[index]]), axis=0)[:, 0]
        shared = np.bincount(pieces_in_group, minlength=group.max() + 1) > 1
        labels[index[shared[group]]] = group[shared[group]]
        counts["on_lattice_edges"] = int(shared[group].sum() - shared.sum())

    remaining = np.flatnonzero(boundary & (labels < 0))
    pairs = _mutual_nearest_across(vertices[remaining], piece[remaining], tolerance)
    if len(pairs):
        first_label = labels.max() + 1
        labels[remaining[pairs[:, 0]]] = first_label + np.arange(len(pairs))
        labels[remaining[pairs[:, 1]]] = first_label + np.arange(len(pairs))
        counts["by_distance"] = int(len(pairs))
    vertices, faces, colours = _merge_labelled(vertices, faces, colours, labels)
    return vertices, faces, colours, counts


def _mutual_nearest_across(points: np.ndarray, owner: np.ndarray, tolerance: float) -> np.ndarray:
    """(P, 2) index pairs of points with different owners that are each other's nearest such point within tolerance."""
    if len(points) < 2 or len(np.unique(owner)) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    distance, nearest = cKDTree(points).query(points, k=min(8, len(points)), distance_upper_bound=tolerance)
    found = np.isfinite(distance)
    other = np.zeros_like(found)
    rows = np.nonzero(found)[0]
    other[found] = owner[nearest[found]] != owner[rows]
    partner = np.full(len(points), -1)
    has_partner = other.any(axis=1)
    partner[has_partner] = nearest[has_partner, np.argmax(other, axis=1)[has_partner]]
    candidates = np.flatnonzero(partner >= 0)
    mutual = candidates[partner[partner[candidates]] == candidates]
    mutual = mutual[mutual < partner[mutual]]
    return np.column_stack([mutual, partner[mutual]]).astype(np.int64)


def _merge_labelled(vertices: np.ndarray, faces: np.ndarray, colours: np.ndarray,
                    labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices sharing a label >= 0 become one (mean position and colour); faces that collapse or
    repeat another face are dropped."""
    grouped = np.flatnonzero(labels >= 0)
    if len(grouped) == 0:
        return vertices, faces, colours
    group_labels, first, inverse, sizes = np.unique(labels[grouped], return_index=True, return_inverse=True,
                                                    return_counts=True)
    representative = grouped[first]
    vertices, colours = vertices.copy(), colours.copy()
    for target, source in ((vertices, vertices.copy()), (colours, colours.copy())):
        total = np.zeros((len(group_labels), source.shape[1]))
        np.add.at(total, inverse, source[grouped])
        target[representative] = total / sizes[:, None]
    remap = np.arange(len(vertices))
    remap[grouped] = representative[inverse]
    faces = remap[faces]
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    _, first_face = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
    faces = faces[np.sort(first_face)]
    return drop_unreferenced(vertices, faces, colours)


def boundary_vertices(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """(V,) bool: the vertex lies on an edge used by exactly one face."""
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    keys = edges[:, 0] * np.int64(num_vertices) + edges[:, 1]
    unique, counts = np.unique(keys, return_counts=True)
    single = unique[counts == 1]
    boundary = np.zeros(num_vertices, dtype=bool)
    boundary[single // num_vertices] = True
    boundary[single % num_vertices] = True
    return boundary


def face_components(faces: np.ndarray, num_vertices: int) -> tuple[int, np.ndarray]:
    """(count, label per face) of the pieces connected through shared vertices."""
    if len(faces) == 0:
        return 0, np.zeros(0, dtype=np.int64)
    # Vertex graph: each face links its three corners; a face's piece is its first corner's.
    rows = faces[:, [0, 1, 2]].reshape(-1)
    cols = faces[:, [1, 2, 0]].reshape(-1)
    graph = sparse.coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(num_vertices, num_vertices))
    count, vertex_label = csgraph.connected_components(graph, directed=False)
    return int(count), vertex_label[faces[:, 0]]


def remove_small_components(vertices: np.ndarray, faces: np.ndarray, colours: np.ndarray,
                            min_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Drop connected pieces with fewer faces than ``min_fraction`` x the largest piece's.

    Returns the mesh and a summary: components before, removed, faces removed.
    """
    count, label = face_components(faces, len(vertices))
    if count == 0:
        return vertices, faces, colours, {"components": 0, "components_removed": 0, "faces_removed": 0}
    sizes = np.bincount(label, minlength=count)
    keep_component = sizes >= min_fraction * sizes.max()
    keep_face = keep_component[label]
    summary = {
        "components": count,
        "components_removed": int((~keep_component).sum()),
        "faces_removed": int((~keep_face).sum()),
    }
    vertices, faces, colours = drop_unreferenced(vertices, faces[keep_face], colours)
    return vertices, faces, colours, summary
