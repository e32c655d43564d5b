"""The operator's Settings come from the chart's environment variables."""

from __future__ import annotations

from dioptra_operator.settings import DEFAULT_RUNNER_IMAGE, Settings


def test_settings_are_read_from_the_chart_environment() -> None:
    settings = Settings.from_env(
        {
            "DIOPTRA_RUNNER_IMAGE": "img:1",
            "DIOPTRA_DEFAULT_S3_ENDPOINT": "http://minio:9000",
            "DIOPTRA_DEFAULT_S3_REGION": "us-east-1",
            "DIOPTRA_DEFAULT_CREDENTIALS_SECRET": "s3",
            "DIOPTRA_PREFECT_API_URL": "http://prefect/api",
            "DIOPTRA_RUNNER_SERVICE_ACCOUNT": "runner",
            "DIOPTRA_METRICS_PORT": "0",
        }
    )
    assert settings == Settings(
        runner_image="img:1",
        default_s3_endpoint="http://minio:9000",
        default_s3_region="us-east-1",
        default_credentials_secret="s3",
        prefect_api_url="http://prefect/api",
        runner_service_account="runner",
        metrics_port=0,
    )


def test_empty_variables_fall_back_to_defaults() -> None:
    settings = Settings.from_env({"DIOPTRA_RUNNER_IMAGE": "", "DIOPTRA_PREFECT_API_URL": " "})
    assert settings.runner_image == DEFAULT_RUNNER_IMAGE
    assert settings.prefect_api_url is None
    assert settings.runner_service_account == "dioptra-runner"
