"""The model layer: LFV package format and the DLR runtime. Imports nothing above it.

package zip/folder ─archive─▶ manifest.json + stage folder ─preflight (tvm_graph, tvm_params,
elf)─▶ ModelPackage ─device─▶ cpu|gpu ─runner (the only `import dlr`)─▶ outputs
"""
