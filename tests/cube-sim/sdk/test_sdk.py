"""Drives the cube-sim binary with the official Python SDK (ucloud-sdk-python3): the requests
are encoded and signed exactly as the SDK does, and the answers must load into its schemas.

Run: `make test` (a virtual environment from requirements.txt), or pip install -r requirements.txt && pytest tests/cube-sim/sdk
The binary is $CUBE_SIM_BIN, else ${CARGO_TARGET_DIR:-target}/debug/cube-sim (built if absent).
"""

import base64
import logging
import os
import subprocess
import time

import pytest
from ucloud.client import Client
from ucloud.core import exc

PUBLIC = "sdk-public-key"
PRIVATE = "sdk-private-key"
REGION, ZONE = "cn-bj2", "cn-bj2-05"
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
UHUB = "uhub.service.ucloud.cn/library/nginx:1.27"


def binary():
    if os.environ.get("CUBE_SIM_BIN"):
        return os.environ["CUBE_SIM_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    path = os.path.join(target, "debug", "cube-sim")
    if not os.path.exists(path):
        subprocess.run(["cargo", "build", "-p", "cube-sim", "--bin", "cube-sim"], cwd=REPO, check=True, timeout=1800)
    return path


@pytest.fixture(scope="module")
def sim_url():
    proc = subprocess.Popen(
        [binary(), "--listen", "127.0.0.1:0", "--key", f"{PUBLIC}:{PRIVATE}", "--pending-ms", "0", "--creating-ms", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:"), line
        yield line.split(" ", 2)[2]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def client(url, private=PRIVATE):
    return Client(
        {
            "region": REGION,
            "project_id": "org-sdk",
            "public_key": PUBLIC,
            "private_key": private,
            "base_url": url,
            "max_retries": 0,
            "timeout": 10,
            "log_level": logging.WARNING,
        }
    )


def pod_yaml(uid, cpu="1", mem="2Gi", image=UHUB, extra=""):
    return (
        "apiVersion: v1\nkind: Pod\nmetadata:\n"
        f"  name: web-{uid}\n  namespace: shop\n  uid: {uid}\n"
        "  annotations:\n    vk.cube.ucloud.cn/node: uk8s-abcdefgh-vk-x1y2z\n"
        "spec:\n  containers:\n  - name: app\n"
        f"    image: {image}\n    resources:\n      limits:\n        cpu: \"{cpu}\"\n        memory: {mem}\n" + extra
    )


def b64(text):
    return base64.b64encode(text.encode()).decode()


def decoded(pod_b64):
    return base64.b64decode(pod_b64).decode()


def create(cube, uid, **extra):
    req = {"Zone": ZONE, "VPCId": "uvnet-sdk", "SubnetId": "subnet-sdk", "Pod": b64(pod_yaml(uid))}
    req.update(extra)
    return cube.create_cube_pod(req)


def test_cube_pod_lifecycle_through_the_sdk(sim_url):
    cube = client(sim_url).cube()
    made = create(cube, "sdk-uid-1", Group="uk8s-abcdefgh-vk-x1y2z", ChargeType="Postpay", Quantity=1, CpuPlatform="Auto")
    cube_id = made["CubeId"]
    assert cube_id.startswith("cube-")
    text = decoded(made["Pod"])
    assert f"cubeId: {cube_id}" in text
    assert "uid: sdk-uid-1" in text
    assert "vk.cube.ucloud.cn/node: uk8s-abcdefgh-vk-x1y2z" in text
    assert "phase: Running" in text

    got = cube.get_cube_pod({"Zone": ZONE, "Uid": "sdk-uid-1"})
    assert f"cubeId: {cube_id}" in decoded(got["Pod"])

    listed = cube.list_cube_pod({"Zone": ZONE, "Offset": 0, "Limit": 10, "Group": "uk8s-abcdefgh-vk-x1y2z"})
    assert listed["TotalCount"] == 1
    assert isinstance(listed["Pods"], list)

    again = create(cube, "sdk-uid-1")
    assert again["CubeId"] == cube_id

    renewed = cube.renew_cube_pod({"Zone": ZONE, "CubeId": cube_id, "Pod": b64(pod_yaml("sdk-uid-1", cpu="2", mem="4Gi"))})
    assert "cpu: '2'" in decoded(renewed["Pod"]) or 'cpu: "2"' in decoded(renewed["Pod"])
    cube.reboot_cube_pod({"Zone": ZONE, "CubeId": cube_id})
    cube.modify_cube_extend_info({"Zone": ZONE, "CubeId": cube_id, "Name": "shop-web"})
    assert cube.modify_cube_tag({"Zone": ZONE, "CubeId": cube_id, "Tag": "team-a"})["CubeId"] == cube_id
    info = cube.get_cube_extend_info({"Zone": ZONE, "CubeIds": cube_id})
    assert info["ExtendInfo"][0]["Name"] == "shop-web"
    assert info["ExtendInfo"][0]["Tag"] == "team-a"

    cube.delete_cube_pod({"Zone": ZONE, "CubeId": cube_id, "ReleaseEIP": "true"})
    with pytest.raises(exc.RetCodeException) as e:
        cube.get_cube_pod({"Zone": ZONE, "CubeId": cube_id})
    assert e.value.code == 8202


def test_tokens_price_and_metrics_load_into_the_sdk_schemas(sim_url):
    cube = client(sim_url).cube()
    cube_id = create(cube, "sdk-uid-2")["CubeId"]
    exec_token = cube.get_cube_exec_token({"Zone": ZONE, "CubeId": cube_id, "ContainerName": "app"})
    assert exec_token["TerminalUrl"].startswith("ws://127.0.0.1:")
    assert exec_token["TerminalUrl"].endswith("token=" + exec_token["Token"])
    token = cube.get_cube_token({"Zone": ZONE, "Uid": "sdk-uid-2", "ContainerName": "app"})["Token"]
    assert len(token) == 40

    price = cube.get_cube_price({"Zone": ZONE, "ChargeType": "Month", "Count": 1, "Cpu": 1000, "Mem": 2048, "Quantity": 1})
    assert isinstance(price["Price"], int) and price["Price"] < price["OriginalPrice"]

    now = int(time.time())
    metrics = cube.get_cube_metrics(
        {
            "Zone": ZONE,
            "ResourceId": cube_id,
            "ContainerName": "app",
            "MetricName": "CPUUsageNanoCores",
            "BeginTime": now - 600,
            "EndTime": now + 5,
        }
    )
    values = metrics["DataSets"][0]["Values"]
    assert values and values[-1]["Value"] == 250000000.0
    assert isinstance(values[-1]["Timestamp"], int)
    cube.delete_cube_pod({"Zone": ZONE, "CubeId": cube_id})


def test_pod_rules_answer_with_retcodes(sim_url):
    cube = client(sim_url).cube()
    with pytest.raises(exc.RetCodeException) as e:
        cube.create_cube_pod({"Zone": ZONE, "VPCId": "uvnet-sdk", "SubnetId": "subnet-sdk", "Pod": b64(pod_yaml("sdk-bad", cpu="1", mem="8Gi"))})
    assert e.value.code == 8201
    assert "not a Cube size" in e.value.message


def test_eip_and_firewall_through_the_unet_client(sim_url):
    c = client(sim_url)
    cube_id = create(c.cube(), "sdk-uid-3")["CubeId"]
    unet = c.unet()
    alloc = unet.allocate_eip({"OperatorName": "Bgp", "Bandwidth": 2, "ChargeType": "Dynamic", "PayMode": "Bandwidth", "Quantity": 1})
    eip = alloc["EIPSet"][0]["EIPId"]
    assert alloc["EIPSet"][0]["EIPAddr"][0]["OperatorName"] == "Bgp"
    unet.bind_eip({"EIPId": eip, "ResourceType": "cube", "ResourceId": cube_id})
    described = unet.describe_eip({"EIPIds": [eip]})
    assert described["TotalCount"] == 1
    assert described["EIPSet"][0]["Status"] == "used"
    assert described["EIPSet"][0]["Resource"]["ResourceId"] == cube_id
    with pytest.raises(exc.RetCodeException) as e:
        unet.release_eip({"EIPId": eip})
    assert e.value.code == 4155
    unet.grant_firewall({"FWId": "firewall-sdk", "ResourceType": "cube", "ResourceId": cube_id})
    unet.un_bind_eip({"EIPId": eip, "ResourceType": "cube", "ResourceId": cube_id})
    unet.release_eip({"EIPId": eip})
    assert unet.describe_eip({"EIPIds": [eip]})["TotalCount"] == 0
    c.cube().delete_cube_pod({"Zone": ZONE, "CubeId": cube_id})


def test_udisk_through_the_udisk_client(sim_url):
    udisk = client(sim_url).udisk()
    made = udisk.create_udisk({"Zone": ZONE, "Name": "pvc-sdk", "Size": 10, "DiskType": "SSDDataDisk"})
    disk = made["UDiskId"][0]
    got = udisk.describe_udisk({"Zone": ZONE, "UDiskId": disk})
    assert got["DataSet"][0]["Status"] == "Available"
    assert got["DataSet"][0]["Size"] == 10
    udisk.delete_udisk({"Zone": ZONE, "UDiskId": disk})
    assert udisk.describe_udisk({"Zone": ZONE, "UDiskId": disk})["TotalCount"] == 0


def test_gateway_errors_reach_the_sdk_as_retcodes(sim_url):
    with pytest.raises(exc.RetCodeException) as e:
        client(sim_url, private="wrong").cube().list_cube_pod({"Zone": ZONE})
    assert e.value.code == 171
    with pytest.raises(exc.RetCodeException) as e:
        client(sim_url).invoke("NoSuchAction", {})
    assert e.value.code == 161
    with pytest.raises(exc.RetCodeException) as e:
        client(sim_url).cube().list_cube_pod({"Zone": "cn-gd-02"})
    assert e.value.code == 293
