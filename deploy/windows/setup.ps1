#Requires -Version 5.1
<#
.SYNOPSIS
Sets up a Windows instance for finetune_real.py: Python 3.11, a venv, the project with the game extra.

.DESCRIPTION
Idempotent: what is already there is kept, so the startup task (register-task.ps1) runs it before
every start; on a replacement instance whose system disk is new it installs Python again, on the
same instance it takes a few seconds. Run it once by hand, as Administrator, from the project's
root on the persistent volume:

    powershell -NoProfile -ExecutionPolicy Bypass -File deploy\windows\setup.ps1 -DataRoot D:\racerl

JAX on Windows runs on the CPU: the fine-tune's networks are small and the game sets the pace.
#>
param(
    # The project (a clone or copy of the repository), on the persistent volume.
    [string]$ProjectRoot = (Resolve-Path (Join-Path $PSScriptRoot '..\..')).Path,
    # Runs and logs: on the persistent volume, so they outlive the instance.
    [string]$DataRoot = 'D:\racerl',
    [string]$PythonVersion = '3.11.9',
    # The project's extras: game = the reference game (CarRacing, Box2D).
    [string]$Extras = 'game'
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

function Find-Python311 {
    # The py launcher knows every registered install; the default per-machine path is the fallback.
    $launcher = Get-Command 'py.exe' -ErrorAction SilentlyContinue
    if ($launcher) {
        $found = & $launcher.Source '-3.11' '-c' 'import sys; print(sys.executable)' 2>$null
        if ($LASTEXITCODE -eq 0 -and $found) { return $found.Trim() }
    }
    $default = Join-Path $env:ProgramFiles 'Python311\python.exe'
    if (Test-Path $default) { return $default }
    return $null
}

$python = Find-Python311
if (-not $python) {
    $installer = Join-Path $env:TEMP "python-$PythonVersion-amd64.exe"
    $url = "https://www.python.org/ftp/python/$PythonVersion/python-$PythonVersion-amd64.exe"
    Write-Host "Installing Python $PythonVersion from $url"
    Invoke-WebRequest -Uri $url -OutFile $installer -UseBasicParsing
    $proc = Start-Process -FilePath $installer -ArgumentList @('/quiet', 'InstallAllUsers=1', 'PrependPath=1',
        'Include_test=0', 'Include_launcher=1') -Wait -PassThru
    if ($proc.ExitCode -ne 0) { throw "the Python installer failed with exit code $($proc.ExitCode)" }
    $python = Find-Python311
    if (-not $python) { throw "Python 3.11 is not found after installing it; install it by hand from $url" }
}
Write-Host "Python: $python"

$venvPython = Join-Path $ProjectRoot '.venv\Scripts\python.exe'
# A venv from another instance points at that instance's Python: made again when it does not start.
$venvWorks = $false
if (Test-Path $venvPython) {
    & $venvPython '-c' 'import sys' 2>$null
    $venvWorks = $LASTEXITCODE -eq 0
}
if (-not $venvWorks) {
    Write-Host "Creating the venv in $ProjectRoot\.venv"
    & $python '-m' 'venv' '--clear' (Join-Path $ProjectRoot '.venv')
    if ($LASTEXITCODE -ne 0) { throw "python -m venv failed ($LASTEXITCODE)" }
}

& $venvPython '-c' 'import racerl_jax.finetune, bridge.games.carracing' 2>$null
if ($LASTEXITCODE -ne 0) {
    Write-Host "Installing the project with extras [$Extras]"
    & $venvPython '-m' 'pip' 'install' '--quiet' '--upgrade' 'pip'
    & $venvPython '-m' 'pip' 'install' '--quiet' '-e' ($ProjectRoot + '[' + $Extras + ']')
    if ($LASTEXITCODE -ne 0) { throw "pip install failed ($LASTEXITCODE); see its output above" }
    & $venvPython '-c' 'import racerl_jax.finetune, bridge.games.carracing'
    if ($LASTEXITCODE -ne 0) { throw 'the project does not import after installing it; see the error above' }
}

foreach ($dir in @((Join-Path $DataRoot 'runs'), (Join-Path $DataRoot 'logs'))) {
    New-Item -ItemType Directory -Force -Path $dir | Out-Null
}
Write-Host "Ready: $venvPython; runs and logs under $DataRoot"
