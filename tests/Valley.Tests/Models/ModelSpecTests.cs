using Valley.Models;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Models;

public class ModelSpecTests
{
    public ModelSpecTests() => TestUtil.Init();

    [Fact]
    public void MlpHasPyTorchSequentialParameterNames()
    {
        var m = ModelSpec.Parse("mlp:784-128-64-10").Build([1, 28, 28], 10, seed: 0);
        Assert.Equal(["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"], m.named_parameters().Select(p => p.name));
        Assert.Equal([128L, 784L], m.named_parameters().First().parameter.shape);
        Assert.Equal([2L, 10L], m.call(zeros([2, 1, 28, 28])).shape);
    }

    [Fact]
    public void LeNetAndResNetHavePyTorchNamesAndRunOnBothImageSizes()
    {
        var lenet = ModelSpec.Parse("lenet").Build([1, 28, 28], 10, seed: 0);
        Assert.Equal(["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"],
            lenet.named_parameters().Select(p => p.name));
        Assert.Equal([2L, 10L], ModelSpec.Parse("lenet").Build([3, 32, 32], 10, 0).call(zeros([2, 3, 32, 32])).shape);
        var resnet = ModelSpec.Parse("resnet:8").Build([3, 32, 32], 10, seed: 0);
        var names = resnet.state_dict().Keys.ToList();
        Assert.Contains("bn1.running_mean", names);
        Assert.Contains("layer2.0.shortcut.0.weight", names);
        Assert.Contains("layer2.0.shortcut.1.weight", names);
        Assert.Contains("layer3.0.bn2.bias", names);
        Assert.Equal([2L, 10L], resnet.call(zeros([2, 3, 32, 32])).shape);
    }

    [Theory]
    [InlineData("", "empty model spec")]
    [InlineData("mlp", "needs its widths")]
    [InlineData("mlp:784-x-10", "width 'x'")]
    [InlineData("mlp:784-10:swish", "unknown MLP option 'swish'")]
    [InlineData("transformer", "unknown architecture 'transformer'")]
    [InlineData("resnet:0", "width '0'")]
    public void BadSpecsGiveClearErrors(string spec, string message) =>
        Assert.Contains(message, Assert.Throws<ValleyException>(() => ModelSpec.Parse(spec)).Message);

    [Fact]
    public void DataThatDoesNotFitTheModelIsRefusedBeforeLibTorchSeesIt()
    {
        Assert.Contains("784 features", Assert.Throws<ValleyException>(() => ModelSpec.Parse("mlp:100-10").Build([1, 28, 28], 10, 0)).Message);
        Assert.Contains("10 classes", Assert.Throws<ValleyException>(() => ModelSpec.Parse("mlp:784-5").Build([1, 28, 28], 10, 0)).Message);
        Assert.Contains("[C×28×28] or [C×32×32]", Assert.Throws<ValleyException>(() => ModelSpec.Parse("lenet").Build([20], 10, 0)).Message);
    }
}
