"""Weight sharing (k-means clustering), Huffman coding and Deep Compression storage
(importing registers ``share.cluster``)."""
from .cluster import ClusterConfig, ClusteredModel, SharedWeights, clustered_layers, kmeans_1d
from .deep_compression import load_deep_compressed, save_deep_compressed

Cluster = ClusterConfig
__all__ = ["Cluster", "ClusterConfig", "ClusteredModel", "SharedWeights", "clustered_layers", "kmeans_1d", "load_deep_compressed",
           "save_deep_compressed"]
