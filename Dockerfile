# MedGate image: the API, the DICOM SCP and the workers all run from it (the command differs).
FROM python:3.11-slim-bookworm

RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        dcmtk dicom3tools && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/medgate
COPY pyproject.toml README.md LICENSE ./
COPY app ./app
COPY models ./models
COPY migrations ./migrations
COPY knowledge_base ./knowledge_base
# The CPU build by default; the GPU worker's image is built with a CUDA index (docker-compose.yml).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir torch==2.13.0 --index-url ${TORCH_INDEX} \
    && pip install --no-cache-dir -e .

ENV MEDGATE_DATA_DIR=/data
VOLUME ["/data", "/models"]
EXPOSE 8000 11112
CMD ["medgate", "serve", "--host", "0.0.0.0"]
