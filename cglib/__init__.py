"""cglib: the science behind the coherent-gradients pipeline.

One module per concept, named as the papers name things:
data, corruption, models, robust, pergrad, coherence, train, tables, plots.
"""
