"""OCI images: manifest and config models, and the skopeo image-proxy client."""
