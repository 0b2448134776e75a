"""nemotron-riva in front of the real ASR and TTS servers, driven by NVIDIA's own client library
(nvidia-riva-client) over loopback, as Riva's scripts and Pipecat's Riva services use it."""

import io
import wave

import grpc
import numpy as np
import pytest
import riva.client
from helpers.asr_client import pcm_as_float, to_pcm
from helpers.stacks import speech_servers
from riva.client.proto import health_pb2, health_pb2_grpc

from random_models.asr import speechlike_audio

pytestmark = pytest.mark.slow
KEY = "riva-k3y"


@pytest.fixture(scope="module")
def stack(tiny_asr_model, tiny_tts_model, tmp_path_factory):
    keys = tmp_path_factory.mktemp("riva-keys")
    (keys / "api-key").write_text(KEY)
    common = {"CREDENTIALS_DIRECTORY": str(keys)}  # one key for all three, as the unit drop-in gives
    with speech_servers(tiny_asr_model, tiny_tts_model, common, riva=True) as servers:
        yield servers


@pytest.fixture(scope="module")
def auth(stack):
    return riva.client.Auth(uri=f"127.0.0.1:{stack[2].port}",
                            metadata_args=[["authorization", f"Bearer {KEY}"]])


@pytest.fixture(scope="module")
def offline(tiny_asr_model):
    from nemotron_asr.model import StreamingModel

    model = StreamingModel(tiny_asr_model, 1, max_streams=1)
    return lambda pcm: model.transcribe_offline(pcm_as_float(pcm))


def recognition_config(**extra) -> riva.client.RecognitionConfig:
    settings = {"sample_rate_hertz": 16000, **extra}
    return riva.client.RecognitionConfig(encoding=riva.client.AudioEncoding.LINEAR_PCM, language_code="en-US",
                                         max_alternatives=1, audio_channel_count=1, **settings)


def test_streaming_recognition_gives_interims_and_the_final_transcript(auth, offline):
    pcm = to_pcm(speechlike_audio(2.4, seed=3))
    expected = offline(pcm)
    assert expected
    config = riva.client.StreamingRecognitionConfig(config=recognition_config(), interim_results=True)
    riva.client.add_endpoint_parameters_to_config(config, 0, 0.0, 60_000, 0, 0.0, 0.0)  # no endpoint
    chunks = [pcm[i:i + 3200] for i in range(0, len(pcm), 3200)]
    responses = list(riva.client.ASRService(auth).streaming_response_generator(chunks, config))
    results = [result for response in responses for result in response.results]
    finals = [r.alternatives[0].transcript for r in results if r.is_final]
    interims = [r.alternatives[0].transcript for r in results if not r.is_final]
    assert finals == [expected]
    assert interims and expected.startswith(interims[0].rstrip())


def test_streaming_recognition_of_8_khz_audio(auth, offline):
    """Telephony audio: the gateway brings it to 16 kHz with soxr's stream resampler, chunk by chunk."""
    from nemotron_common.resample import StreamResampler, resample

    pcm16 = to_pcm(speechlike_audio(2.0, seed=4))
    pcm8 = resample(np.frombuffer(pcm16, dtype="<i2"), 16000, 8000).astype("<i2").tobytes()
    chunks = [pcm8[i:i + 1600] for i in range(0, len(pcm8), 1600)]
    back = StreamResampler(8000, 16000)  # what the gateway does with the same chunks
    expected = offline(b"".join(back.chunk(c) for c in chunks) + back.chunk(b"", last=True))
    config = riva.client.StreamingRecognitionConfig(config=recognition_config(sample_rate_hertz=8000))
    riva.client.add_endpoint_parameters_to_config(config, 0, 0.0, 60_000, 0, 0.0, 0.0)
    responses = riva.client.ASRService(auth).streaming_response_generator(chunks, config)
    finals = [r.alternatives[0].transcript for response in responses for r in response.results if r.is_final]
    assert expected and finals == [expected]


def test_offline_recognition_of_a_wav_file(auth, offline):
    pcm = to_pcm(speechlike_audio(1.5, seed=0))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(pcm)
    service = riva.client.ASRService(auth)
    response = service.offline_recognize(buffer.getvalue(), recognition_config())
    assert response.results[0].alternatives[0].transcript == offline(pcm)
    request = riva.client.proto.riva_asr_pb2.RivaSpeechRecognitionConfigRequest()
    config = service.stub.GetRivaSpeechRecognitionConfig(request, metadata=auth.get_auth_metadata())
    assert config.model_config[0].model_name == "tiny-streaming"


def test_synthesis_whole_and_online(auth, stack):
    service = riva.client.SpeechSynthesisService(auth)
    whole = service.synthesize("Hello from the gateway.", voice_name="Magpie-Multilingual.EN-US.Aria",
                               language_code="en-US", sample_rate_hz=22050)
    assert len(whole.audio) > 0 and len(whole.audio) % (2 * 1024) == 0
    chunks = [r.audio for r in service.synthesize_online(["First sentence.", "Second one."], voice_name="leo",
                                                        language_code="en-US", sample_rate_hz=22050)]
    assert len(chunks) > 2 and sum(map(len, chunks)) % (2 * 1024) == 0
    config = service.stub.GetRivaSynthesisConfig(riva.client.proto.riva_tts_pb2.RivaSynthesisConfigRequest(),
                                                 metadata=auth.get_auth_metadata())
    assert [m.model_name for m in config.model_config] == ["john", "sofia", "aria", "jason", "leo"]


def test_synthesis_at_the_rate_the_client_asks(auth):
    """Pipecat and others ask for 24 or 16 kHz: the voices' 22.05 kHz audio is resampled on the way."""
    service = riva.client.SpeechSynthesisService(auth)
    native = service.synthesize("The same words.", voice_name="aria", sample_rate_hz=22050).audio
    for rate in (16000, 24000):
        whole = service.synthesize("The same words.", voice_name="aria", sample_rate_hz=rate).audio
        streamed = b"".join(r.audio for r in service.synthesize_online("The same words.", voice_name="aria",
                                                                        sample_rate_hz=rate))
        expected = len(native) / 2 / 22050 * rate
        assert abs(len(whole) / 2 - expected) <= 2 and abs(len(streamed) / 2 - expected) <= 2, rate


@pytest.mark.parametrize(("call", "fragment"), [
    (lambda a: riva.client.ASRService(a).offline_recognize(b"\0" * 3200,
                                                           recognition_config(sample_rate_hertz=96000)),
     "sample_rate_hertz 96000 is not supported"),
    (lambda a: riva.client.SpeechSynthesisService(a).synthesize("Hi.", sample_rate_hz=96000),
     "sample_rate_hz 96000 is not supported"),
    (lambda a: riva.client.SpeechSynthesisService(a).synthesize("Hi.", voice_name="English-US.Female-1"),
     "valid voices: john, sofia, aria, jason, leo"),
    (lambda a: riva.client.SpeechSynthesisService(a).synthesize("x" * 5000), "longer than 4000 characters"),
])
def test_what_cannot_be_served_gets_invalid_argument(auth, call, fragment):
    with pytest.raises(grpc.RpcError) as error:
        call(auth)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in error.value.details()


def test_the_key_and_health(stack):
    gateway = stack[2]
    no_key = riva.client.Auth(uri=f"127.0.0.1:{gateway.port}")
    with pytest.raises(grpc.RpcError) as error:
        riva.client.SpeechSynthesisService(no_key).synthesize("Hi.")
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The configuration names only voices and the model; Pipecat asks for it without metadata.
    request = riva.client.proto.riva_tts_pb2.RivaSynthesisConfigRequest()
    assert riva.client.SpeechSynthesisService(no_key).stub.GetRivaSynthesisConfig(request).model_config
    health = health_pb2_grpc.HealthStub(no_key.channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_streaming_recognition_ends_utterances_at_pauses(auth):
    """Riva servers endpoint on their own; the gateway ends an utterance once it has words and then
    stop_history ms of quiet audio (or of no new words), so a client streaming in real time gets the
    utterance's final while it still streams."""
    import time

    pcm = to_pcm(speechlike_audio(1.6, seed=3)) + bytes(3 * 16000 * 2)  # then 3 s of silence
    config = riva.client.StreamingRecognitionConfig(config=recognition_config(), interim_results=False)
    riva.client.add_endpoint_parameters_to_config(config, 0, 0.0, 800, 0, 0.0, 0.0)
    sent_all = []

    def paced():  # 100 ms chunks in real time
        for i in range(0, len(pcm), 3200):
            time.sleep(0.1)
            yield pcm[i:i + 3200]
        sent_all.append(time.monotonic())

    finals = []
    for response in riva.client.ASRService(auth).streaming_response_generator(paced(), config):
        finals += [(time.monotonic(), r.alternatives[0].transcript) for r in response.results if r.is_final]
    assert finals and finals[0][1]
    assert finals[0][0] < sent_all[0] - 1.0  # well before the stream ended: at the pause
