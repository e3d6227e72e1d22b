module vkcube.local/upstream-vk

go 1.26.0

require github.com/virtual-kubelet/virtual-kubelet v1.14.1
