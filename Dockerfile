# One slim, non-root image for every role (run, eventsource, sensor, controller).
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY eventsources ./eventsources
COPY sensors ./sensors
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
RUN useradd --uid 65532 --create-home triggerfish
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY examples /app/examples
USER 65532
WORKDIR /home/triggerfish
EXPOSE 12000 8080
ENTRYPOINT ["triggerfish"]
CMD ["--help"]
