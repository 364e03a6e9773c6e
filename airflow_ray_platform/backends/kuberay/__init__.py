"""The KubeRay backend: manifests rendered from job_configuration, validated against KubeRay's CRDs."""
