"""Input pipelines: tfds datasets by name, and the offline bundled MNIST subset."""
