"""lfv-edge: run Amazon Lookout for Vision edge model packages without the LFV service.

Importing this package runs nothing: no dlr, no cv2, no network. The command line lives in
`lfv_edge.cli`; the data path is package → preprocess → runner → postprocess.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
