# The official Airflow image with this checkout's provider installed (what docker-compose.yaml runs).
# A tag can be moved by its registry: pass a digest to build on exactly what was reviewed,
#   docker build --build-arg AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11@sha256:<digest> .
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}
COPY --chown=airflow:root . /opt/airflow-ray-platform
# Airflow stays at the image's version; the provider brings Ray, pyarrow, boto3 and the rest, and the
# examples extra what the example DAG's job imports (numpy).
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" "/opt/airflow-ray-platform[examples]"
