"""TaskFlow decorators: ``@task.ray``."""
