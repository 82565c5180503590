"""Latent structure for CSTWA: similarity graphs over users and items and their propagation.

Reference:
    Kai Ouyang et al. "Click-aware Structure Transfer with Sample Weight Assignment for Post-Click
    Conversion Rate Estimation." in ECML-PKDD 2023, Sections 3.3.2-3.3.3 (Eqs. 2-5) and 3.4.1
    (Eq. 9).

Pieces, each usable and testable on its own:

- :func:`group_representations`: Eq. 2 / Eq. 8, every user's (item's) field vectors
  concatenated, from any :class:`~recbole_cstwa.model.layers.FieldEmbedding`;
- :func:`nearest_neighbours`: Eqs. 3-4, cosine top-K with faiss (inner product on L2-normalised
  vectors; exact ``IndexFlatIP`` or approximate ``IndexIVFFlat`` / ``IndexHNSWFlat``, or
  ``auto``: :func:`choose_index`);
- :func:`build_graph`: Eqs. 3-5 end to end, negatives to 0, ``D^-1/2 A D^-1/2``, as a coalesced
  ``torch.sparse_coo_tensor``;
- :class:`RowGraph` and :func:`propagate_rows`: Eq. 9 for a few rows only (CSTWA's per-batch
  Structure Migrator), differentiable;

The graph state a model keeps (``A_hat`` and ``P``) lives in
:class:`~recbole_cstwa.model.multitask.cstwa.entity_graph.EntityGraph`; the on-disk cache of the pre-trained
embedding and the graphs in :mod:`recbole_cstwa.model.multitask.cstwa.artifact_cache`.

All node loops are vectorised (numpy / torch), none runs in Python per node.
"""

import logging

import faiss
import numpy as np
import torch

#: Values of ``graph_index``: faiss index types for the top-K search.
INDEX_TYPES = ("auto", "exact", "ivf", "hnsw")
#: The approximate index ``auto`` takes above ``graph_exact_max_nodes`` nodes (on CPU), chosen by
#: benchmarks/bench_scale.py on pre-trained embeddings (results/training-step.md).
AUTO_APPROXIMATE_INDEX = "ivf"


# ----- Eq. 2 / Eq. 8: representations ------------------------------------------------------
def group_representations(embedding, features, group, batch_size=262144):
    """Every entity's representation: the concatenation of its group's field vectors (Eq. 2).

    Args:
        embedding (FieldEmbedding): the embedding layer to read.
        features: an Interaction or a dict ``field -> tensor`` with one row per entity (RecBole's
            ``get_user_feature()`` / ``get_item_feature()``: row ``i`` is the entity with id ``i``).
        group (str): ``"user"`` or ``"item"``.
        batch_size (int): rows looked up at a time (bounds the peak memory of large tables).

    Returns:
        torch.Tensor: ``(N, n_fields * d)``, differentiable when gradients are enabled.
    """
    fields = [field for field, _ in embedding.groups[group]]
    total = len(features[fields[0]])
    parts = []
    for start in range(0, total, batch_size):
        chunk = {field: features[field][start : start + batch_size] for field in fields}
        parts.append(embedding(chunk, group)[0].flatten(1))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


# ----- Eqs. 3-4: cosine top-K with faiss ---------------------------------------------------
def gpu_search_available():
    """Whether the installed faiss has GPU indexes (faiss-gpu) and a GPU is visible."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def choose_index(index_type, num_nodes, exact_max_nodes, gpu=False):
    """The faiss index a search over ``num_nodes`` nodes uses, and why (for the log).

    ``auto``: exact search (``IndexFlatIP``) up to ``exact_max_nodes`` nodes, where its cost
    (quadratic in the nodes) is still small; above, :data:`AUTO_APPROXIMATE_INDEX`. On a GPU
    (``gpu``, with faiss-gpu) exact search at any size. Other values are taken as they are.
    """
    if index_type != "auto":
        return index_type, f"graph_index: {index_type}"
    if gpu:
        return "exact", "graph_index auto on a GPU: exact search (faiss-gpu)"
    if num_nodes <= exact_max_nodes:
        return "exact", f"graph_index auto: {num_nodes} nodes <= graph_exact_max_nodes {exact_max_nodes}"
    return (
        AUTO_APPROXIMATE_INDEX,
        f"graph_index auto: {num_nodes} nodes > graph_exact_max_nodes {exact_max_nodes}, "
        "where exact search grows quadratic",
    )


def _faiss_index(vectors, index_type, ivf_nlist, nprobe, hnsw_m, hnsw_ef_search, search_k, gpu=False):
    """A faiss inner-product index over ``vectors`` (float32, contiguous); on the GPU with
    ``gpu`` (exact and IVF; faiss has no GPU HNSW)."""
    dim = vectors.shape[1]
    if index_type == "exact":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "ivf":
        # k-means needs at least one point a list; faiss's training wants about 39 points a list
        # (it still warns on tiny inputs, where exact search is the better choice anyway).
        nlist = int(max(1, min(ivf_nlist, len(vectors) // 39 or 1)))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = int(min(nprobe, nlist))
    else:
        index = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = int(max(hnsw_ef_search, search_k))
    if gpu and index_type != "hnsw":
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
        index.gpu_resources = resources  # kept alive as long as the index
        if index_type == "ivf":
            index.nprobe = int(min(nprobe, index.nlist))
    index.add(vectors)
    return index


def nearest_neighbours(
    vectors,
    top_k,
    self_loop=True,
    index_type="exact",
    ivf_nlist=1024,
    nprobe=16,
    hnsw_m=32,
    hnsw_ef_search=64,
    exact_max_nodes=50000,
    gpu=False,
    log_name="graph",
):
    """Each row's top-K cosine neighbours among the rows (Eqs. 3-4).

    Rows are L2-normalised and searched by inner product. The node itself is dropped from the
    search result and, with ``self_loop``, put back first with its own similarity (1, or 0 for a
    zero vector): the K kept edges are then the self edge and the K-1 most similar other nodes,
    which is the plain top-K of an exact cosine search (the node is its own nearest neighbour),
    made independent of ties and of an approximate index missing the node itself. Without
    ``self_loop``, the K most similar other nodes.

    ``index_type`` ``auto`` picks the index with :func:`choose_index` (``exact_max_nodes``) and
    logs which and why (``log_name`` names the graph). faiss runs with torch's thread count
    (``torch.get_num_threads()``, which RecBole's ``worker``/``nproc`` settings do not change),
    and on the GPU with ``gpu`` when faiss-gpu is installed.

    Returns:
        tuple: ``(neighbours, similarities)``, ``(N, K')`` int64 and float32 numpy arrays with
        ``K' = min(K, N)`` (``min(K, N - 1)`` without self loop), most similar first; a slot an
        approximate index could not fill has neighbour ``-1`` and similarity ``-inf``.
    """
    gpu = bool(gpu) and gpu_search_available()
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().cpu().numpy()
    vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    n = len(vectors)
    if n == 0:
        return np.zeros((0, 0), dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    vectors = vectors.copy()
    faiss.normalize_L2(vectors)  # zero rows stay zero
    others = min(top_k - 1 if self_loop else top_k, n - 1)
    search_k = min(others + 1, n)  # one more: the node itself is usually among the results
    chosen, reason = choose_index(index_type, n, exact_max_nodes, gpu)
    logging.getLogger(__name__).info(
        f"{log_name}: {chosen} faiss search over {n} nodes ({reason}; "
        f"{'GPU' if gpu else f'{torch.get_num_threads()} threads'})"
    )
    faiss.omp_set_num_threads(torch.get_num_threads())
    index = _faiss_index(vectors, chosen, ivf_nlist, nprobe, hnsw_m, hnsw_ef_search, search_k, gpu)
    similarities, neighbours = index.search(vectors, search_k)

    rows = np.arange(n)[:, None]
    usable = (neighbours >= 0) & (neighbours != rows)
    masked = np.where(usable, similarities, -np.inf).astype(np.float32)
    order = np.argsort(-masked, axis=1, kind="stable")[:, :others]
    neighbours = np.take_along_axis(neighbours, order, axis=1)
    similarities = np.take_along_axis(masked, order, axis=1)
    neighbours = np.where(np.isfinite(similarities), neighbours, -1)
    if self_loop:
        own = (vectors * vectors).sum(axis=1, keepdims=True).astype(np.float32)
        neighbours = np.concatenate([rows.astype(np.int64), neighbours], axis=1)
        similarities = np.concatenate([own, similarities], axis=1)
    return neighbours.astype(np.int64), similarities


# ----- Eqs. 3-5: the normalised sparse graph -------------------------------------------------
def normalise_adjacency(rows, cols, values, num_nodes):
    """``D^-1/2 A D^-1/2`` of a COO adjacency (Eq. 5), D = row sums of A; degree 0 -> 0."""
    degree = np.bincount(rows, weights=values, minlength=num_nodes)
    inverse_sqrt = np.zeros_like(degree)
    positive = degree > 0
    inverse_sqrt[positive] = degree[positive] ** -0.5
    return (inverse_sqrt[rows] * values * inverse_sqrt[cols]).astype(np.float32)


def _symmetrise(rows, cols, values, num_nodes):
    """``max(A, A^T)``: the union of both edge directions (cosine weights are symmetric)."""
    rows, cols = np.concatenate([rows, cols]), np.concatenate([cols, rows])
    values = np.concatenate([values, values])
    keys = rows * num_nodes + cols
    order = np.lexsort((-values, keys))  # per key, largest value first
    keys, values = keys[order], values[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    keys, values = keys[first], values[first]
    return keys // num_nodes, keys % num_nodes, values


def build_graph(
    representations,
    top_k,
    self_loop=True,
    symmetric=False,
    padding_rows=1,
    **search_settings,
):
    """The normalised top-K cosine graph over the rows of ``representations`` (Eqs. 3-5).

    Steps: L2-normalise -> faiss inner-product top-K (:func:`nearest_neighbours`) -> negative
    similarities to 0 (a 0 weight is no edge, so a row keeps at most K non-zeros) -> optionally
    ``max(A, A^T)`` (``symmetric``; rows may then hold more than K edges) -> ``D^-1/2 A D^-1/2``
    with D the row sums of A.

    The first ``padding_rows`` rows (RecBole's ``[PAD]`` entity, id 0) are neither searched nor
    anybody's neighbour: each keeps one self edge of weight 1, so propagation leaves it as it is.

    Args:
        representations (numpy array or tensor): ``(N, D)`` rows, one per entity id.
        search_settings: :func:`nearest_neighbours`'s index settings (``index_type``,
            ``ivf_nlist``, ``nprobe``, ``hnsw_m``, ``hnsw_ef_search``, ``exact_max_nodes``,
            ``gpu``) and ``log_name``; its defaults otherwise.

    Returns:
        torch.Tensor: a coalesced float32 ``torch.sparse_coo_tensor`` of shape ``(N, N)`` on CPU.
    """
    if torch.is_tensor(representations):
        representations = representations.detach().cpu().numpy()
    representations = np.asarray(representations, dtype=np.float32)
    num_nodes = len(representations)
    padding_rows = min(padding_rows, num_nodes)
    neighbours, similarities = nearest_neighbours(
        representations[padding_rows:],
        top_k,
        self_loop=self_loop,
        **search_settings,
    )
    rows = np.repeat(np.arange(len(neighbours)), neighbours.shape[1]) + padding_rows
    cols = neighbours.reshape(-1) + padding_rows
    values = np.maximum(similarities.reshape(-1), 0.0)  # negatives (and unfilled slots) to 0
    keep = (values > 0) & (neighbours.reshape(-1) >= 0)
    rows, cols, values = rows[keep], cols[keep], values[keep].astype(np.float64)
    if symmetric:
        rows, cols, values = _symmetrise(rows, cols, values, num_nodes)
    pad = np.arange(padding_rows)
    rows = np.concatenate([pad, rows])
    cols = np.concatenate([pad, cols])
    values = np.concatenate([np.ones(padding_rows), values])
    normalised = normalise_adjacency(rows, cols, values, num_nodes)
    indices = torch.from_numpy(np.stack([rows, cols]).astype(np.int64))
    graph = torch.sparse_coo_tensor(
        indices, torch.from_numpy(normalised), (num_nodes, num_nodes), check_invariants=True
    )
    return graph.coalesce()


def graph_summary(graph):
    """Nodes, edges and the mean / max edges a row, for the log."""
    counts = torch.bincount(graph.indices()[0], minlength=graph.shape[0])
    return (
        f"{graph.shape[0]} nodes, {len(graph.values())} edges, "
        f"{counts.float().mean().item():.2f} mean / {int(counts.max().item()) if len(counts) else 0} "
        "max a row"
    )


def graph_to_state(graph):
    """A coalesced sparse graph as plain tensors (loads with ``weights_only=True``)."""
    graph = graph.coalesce()
    return {"indices": graph.indices(), "values": graph.values(), "size": list(graph.shape)}


def graph_from_state(state):
    """The inverse of :func:`graph_to_state`; indices are checked (a bad file cannot corrupt memory)."""
    size = tuple(int(n) for n in state["size"])
    return torch.sparse_coo_tensor(state["indices"], state["values"], size, check_invariants=True).coalesce()


# ----- Eq. 9 for a few rows ---------------------------------------------------------------
class RowGraph:
    """A sparse ``(N, N)`` graph stored by rows (CSR arrays) for gathering a few rows at a time."""

    def __init__(self, row_pointers, columns, values):
        self.row_pointers = row_pointers
        self.columns = columns
        self.values = values

    @classmethod
    def from_sparse(cls, graph):
        graph = graph.coalesce()  # coalesced COO is sorted by row, then column
        rows, columns = graph.indices()
        counts = torch.bincount(rows, minlength=graph.shape[0])
        row_pointers = torch.zeros(graph.shape[0] + 1, dtype=torch.long, device=rows.device)
        row_pointers[1:] = counts.cumsum(0)
        return cls(row_pointers, columns, graph.values())

    def edges_of(self, rows):
        """Edges leaving ``rows``: ``(position of the row in rows, column, value)`` tensors."""
        starts = self.row_pointers[rows]
        counts = self.row_pointers[rows + 1] - starts
        owner = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts)
        offsets = torch.arange(len(owner), device=rows.device) - torch.repeat_interleave(
            counts.cumsum(0) - counts, counts
        )
        positions = torch.repeat_interleave(starts, counts) + offsets
        return owner, self.columns[positions], self.values[positions]


def propagate_all(graph, representations, layers=1):
    """``A_hat^L E`` for every row (Eq. 9): L sparse-dense products."""
    num_nodes = len(graph.row_pointers) - 1
    counts = graph.row_pointers[1:] - graph.row_pointers[:-1]
    rows = torch.repeat_interleave(torch.arange(num_nodes, device=counts.device), counts)
    matrix = torch.sparse_coo_tensor(
        torch.stack([rows, graph.columns]),
        graph.values.to(representations.dtype),
        (num_nodes, len(representations)),
        is_coalesced=True,  # CSR order is COO's coalesced order
        check_invariants=False,  # built from a coalesced graph
    )
    for _ in range(layers):
        representations = torch.sparse.mm(matrix, representations)
    return representations


def propagate_rows(graph, rows, representations_of, layers=1):
    """Rows ``rows`` of ``A_hat^L E`` (Eq. 9), looking up only the nodes they reach.

    The L-hop neighbourhood is gathered backwards (rows -> their neighbours -> ...), the
    representations of the farthest set are looked up once with ``representations_of(ids)``
    (differentiable, e.g. live embedding rows), then propagated forward layer by layer with
    scatter sums. Exact for any L; the set looked up grows as K^L.

    Args:
        graph (RowGraph): ``A_hat``.
        rows (torch.LongTensor): the wanted node ids (may repeat).
        representations_of (callable): ids ``(M,)`` -> ``(M, D)`` rows of E.

    Returns:
        torch.Tensor: ``(len(rows), D)``.
    """
    frontiers, hops = [rows], []
    for _ in range(layers):
        owner, columns, values = graph.edges_of(frontiers[-1])
        reached, position = torch.unique(columns, return_inverse=True)
        hops.append((owner, position, values))
        frontiers.append(reached)
    current = representations_of(frontiers[-1])
    for layer in range(layers - 1, -1, -1):
        owner, position, values = hops[layer]
        weighted = current[position] * values.unsqueeze(1).to(current.dtype)
        current = torch.zeros(
            len(frontiers[layer]), current.shape[1], dtype=current.dtype, device=current.device
        ).index_add(0, owner, weighted)
    return current
