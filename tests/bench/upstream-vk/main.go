// Baseline for the pod-burst benchmark (tests/bench/burst.rs --daemon upstream): the upstream Go
// virtual-kubelet's node and pod controllers (module github.com/virtual-kubelet/virtual-kubelet,
// package node/nodeutil) with an in-memory provider that behaves like its mock provider
// (cmd/virtual-kubelet/internal/provider/mock, which another module cannot import): a pod is
// Running and Ready as soon as it is created, and the pod notifier is told at once.
//
// Differences from the stock `virtual-kubelet --provider mock` binary, and why: no kubelet HTTPS
// API (the stock one listens on all interfaces and needs a certificate; the burst never calls it),
// a mutex around the pod map (the stock mock has none and races under several workers), and
// several nodes in one process (as vkhost serves several).
//
// The stock binary runs client-go's default client rate limit (5 requests/s, burst 10) and 10 pod
// sync workers; `--qps`, `--burst` and `--pod-sync-workers` give it another budget (the burst
// benchmark's tuned run gives it vkhost's: 500/s, burst 1000, 64 workers).
//
//	virtual-kubelet --kubeconfig F [--pod-sync-workers 10] [--qps 5 --burst 10] NAME=BENCHLABEL...
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
)

type mockProvider struct {
	mu       sync.Mutex
	pods     map[string]*v1.Pod
	notifier func(*v1.Pod)
}

func key(ns, name string) string { return ns + "/" + name }

func (p *mockProvider) CreatePod(ctx context.Context, pod *v1.Pod) error {
	now := metav1.NewTime(time.Now())
	pod.Status = v1.PodStatus{
		Phase:     v1.PodRunning,
		HostIP:    "1.2.3.4",
		PodIP:     "5.6.7.8",
		StartTime: &now,
		Conditions: []v1.PodCondition{
			{Type: v1.PodInitialized, Status: v1.ConditionTrue},
			{Type: v1.PodReady, Status: v1.ConditionTrue},
			{Type: v1.PodScheduled, Status: v1.ConditionTrue},
		},
	}
	for _, c := range pod.Spec.Containers {
		pod.Status.ContainerStatuses = append(pod.Status.ContainerStatuses, v1.ContainerStatus{
			Name: c.Name, Image: c.Image, Ready: true,
			State: v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: now}},
		})
	}
	p.mu.Lock()
	p.pods[key(pod.Namespace, pod.Name)] = pod
	p.mu.Unlock()
	p.notifier(pod)
	return nil
}

func (p *mockProvider) UpdatePod(ctx context.Context, pod *v1.Pod) error {
	p.mu.Lock()
	p.pods[key(pod.Namespace, pod.Name)] = pod
	p.mu.Unlock()
	p.notifier(pod)
	return nil
}

func (p *mockProvider) DeletePod(ctx context.Context, pod *v1.Pod) error {
	k := key(pod.Namespace, pod.Name)
	p.mu.Lock()
	_, ok := p.pods[k]
	delete(p.pods, k)
	p.mu.Unlock()
	if !ok {
		return errdefs.NotFound("pod not found")
	}
	now := metav1.Now()
	pod.Status.Phase = v1.PodSucceeded
	pod.Status.Reason = "MockProviderPodDeleted"
	for i := range pod.Status.ContainerStatuses {
		started := metav1.Time{}
		if r := pod.Status.ContainerStatuses[i].State.Running; r != nil {
			started = r.StartedAt
		}
		pod.Status.ContainerStatuses[i].Ready = false
		pod.Status.ContainerStatuses[i].State = v1.ContainerState{Terminated: &v1.ContainerStateTerminated{
			Reason: "MockProviderPodContainerDeleted", StartedAt: started, FinishedAt: now,
		}}
	}
	p.notifier(pod)
	return nil
}

func (p *mockProvider) GetPod(ctx context.Context, ns, name string) (*v1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pod, ok := p.pods[key(ns, name)]; ok {
		return pod, nil
	}
	return nil, errdefs.NotFoundf("pod %q is not known to the provider", key(ns, name))
}

func (p *mockProvider) GetPodStatus(ctx context.Context, ns, name string) (*v1.PodStatus, error) {
	pod, err := p.GetPod(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

func (p *mockProvider) GetPods(ctx context.Context) ([]*v1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pods := make([]*v1.Pod, 0, len(p.pods))
	for _, pod := range p.pods {
		pods = append(pods, pod)
	}
	return pods, nil
}

func (p *mockProvider) NotifyPods(ctx context.Context, notifier func(*v1.Pod)) { p.notifier = notifier }

func (p *mockProvider) GetContainerLogs(context.Context, string, string, string, api.ContainerLogOpts) (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader("")), nil
}
func (p *mockProvider) RunInContainer(context.Context, string, string, string, []string, api.AttachIO) error {
	return nil
}
func (p *mockProvider) AttachToContainer(context.Context, string, string, string, api.AttachIO) error {
	return nil
}
func (p *mockProvider) GetStatsSummary(context.Context) (*statsv1alpha1.Summary, error) {
	return &statsv1alpha1.Summary{}, nil
}
func (p *mockProvider) GetMetricsResource(context.Context) ([]*dto.MetricFamily, error) {
	return nil, nil
}
func (p *mockProvider) PortForward(context.Context, string, string, int32, io.ReadWriteCloser) error {
	return nil
}

// configureNode mirrors the mock provider's ConfigureNode: capacity, Ready, an InternalIP.
func configureNode(n *v1.Node, label string) {
	capacity := v1.ResourceList{
		"cpu":    resource.MustParse("1000"),
		"memory": resource.MustParse("4Ti"),
		"pods":   resource.MustParse("200"),
	}
	n.Status.Capacity = capacity
	n.Status.Allocatable = capacity
	now := metav1.Now()
	n.Status.Conditions = []v1.NodeCondition{
		{Type: v1.NodeReady, Status: v1.ConditionTrue, LastHeartbeatTime: now, LastTransitionTime: now, Reason: "KubeletReady", Message: "kubelet is ready."},
		{Type: v1.NodeMemoryPressure, Status: v1.ConditionFalse, LastHeartbeatTime: now, LastTransitionTime: now, Reason: "KubeletHasSufficientMemory"},
		{Type: v1.NodeDiskPressure, Status: v1.ConditionFalse, LastHeartbeatTime: now, LastTransitionTime: now, Reason: "KubeletHasNoDiskPressure"},
		{Type: v1.NodePIDPressure, Status: v1.ConditionFalse, LastHeartbeatTime: now, LastTransitionTime: now, Reason: "KubeletHasSufficientPID"},
		{Type: v1.NodeNetworkUnavailable, Status: v1.ConditionFalse, LastHeartbeatTime: now, LastTransitionTime: now, Reason: "RouteCreated"},
	}
	n.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "127.0.0.1"}}
	n.Status.NodeInfo.OperatingSystem = "linux"
	n.Status.NodeInfo.Architecture = "amd64"
	n.Status.NodeInfo.KubeletVersion = "v1.37.1-vk-v1.14.1"
	n.Labels["vkcube-bench"] = label
}

// clientsetWithLimits is nodeutil.ClientsetFromEnv with the client's rate limit set: one client
// for every node, as the stock binary has.
func clientsetWithLimits(kubeconfig string, qps float32, burst int) (*kubernetes.Clientset, error) {
	config, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: kubeconfig},
		&clientcmd.ConfigOverrides{},
	).ClientConfig()
	if err != nil {
		return nil, err
	}
	config.QPS = qps
	config.Burst = burst
	return kubernetes.NewForConfig(config)
}

func main() {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig")
	workers := flag.Int("pod-sync-workers", 10, "pod sync workers per node (the stock binary's default is 10)")
	qps := flag.Float64("qps", 5, "client requests per second (client-go's default, which the stock binary keeps, is 5)")
	burst := flag.Int("burst", 10, "client requests at once above the rate (client-go's default is 10)")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: virtual-kubelet --kubeconfig F NAME=BENCHLABEL...")
		os.Exit(2)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()

	clientset, err := clientsetWithLimits(*kubeconfig, float32(*qps), *burst)
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(1)
	}
	var nodes []*nodeutil.Node
	for _, arg := range flag.Args() {
		name, label, ok := strings.Cut(arg, "=")
		if !ok {
			fmt.Fprintf(os.Stderr, "node %q is not NAME=BENCHLABEL\n", arg)
			os.Exit(2)
		}
		newProvider := func(cfg nodeutil.ProviderConfig) (nodeutil.Provider, node.NodeProvider, error) {
			configureNode(cfg.Node, label)
			return &mockProvider{pods: map[string]*v1.Pod{}}, nil, nil
		}
		n, err := nodeutil.NewNode(name, newProvider, func(cfg *nodeutil.NodeConfig) error {
			cfg.KubeconfigPath = *kubeconfig
			cfg.NumWorkers = *workers
			cfg.InformerResyncPeriod = time.Minute
			cfg.NodeSpec.Spec.Taints = append(cfg.NodeSpec.Spec.Taints, v1.Taint{
				Key: "virtual-kubelet.io/provider", Value: "cube", Effect: v1.TaintEffectNoSchedule,
			})
			return nil
		}, nodeutil.WithClient(clientset))
		if err != nil {
			fmt.Fprintln(os.Stderr, "node", name+":", err)
			os.Exit(1)
		}
		go n.Run(ctx) //nolint:errcheck
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		if err := n.WaitReady(ctx, time.Minute); err != nil {
			fmt.Fprintln(os.Stderr, "node not ready:", err)
			os.Exit(1)
		}
	}
	fmt.Println("ready")
	<-ctx.Done()
	for _, n := range nodes {
		<-n.Done()
	}
}
