//! Guest power requests: the HW-reduced ACPI sleep-control/reset register and the legacy
//! reset paths (i8042 pulse-reset command, the 0xCF9 reset control register).

use std::sync::Mutex;

use log::info;
use vm_device::bus::PioAddress;
use vm_device::DevicePio;

/// A power event the guest requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestEvent {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset.
    Reboot,
}

/// SLP_EN bit of the HW-reduced sleep control register.
const SLP_EN: u8 = 1 << 5;

/// The power management I/O ports. `notify` is called once per guest request.
pub struct PowerManagement {
    s5_slp_typ: u8,
    reset_value: u8,
    notify: Mutex<Box<dyn FnMut(GuestEvent) + Send>>,
}

impl PowerManagement {
    /// Creates the device: the sleep-control register decodes `(SLP_TYP << 2) | SLP_EN` with
    /// `s5_slp_typ` meaning S5, and `reset_value` written to it means reset.
    pub fn new(s5_slp_typ: u8, reset_value: u8, notify: Box<dyn FnMut(GuestEvent) + Send>) -> Self {
        Self {
            s5_slp_typ,
            reset_value,
            notify: Mutex::new(notify),
        }
    }

    fn raise(&self, ev: GuestEvent) {
        info!("guest requested {ev:?}");
        (self.notify.lock().unwrap_or_else(|e| e.into_inner()))(ev);
    }

    /// Handles a byte written to the ACPI sleep-control/reset register.
    pub fn write_sleep_control(&self, v: u8) {
        if v == self.reset_value {
            self.raise(GuestEvent::Reboot);
        } else if v & SLP_EN != 0 && (v >> 2) & 7 == self.s5_slp_typ {
            self.raise(GuestEvent::PowerOff);
        }
    }
}

/// The port of the ACPI sleep-control/reset register wrapped for the PIO bus.
pub struct SleepControlPort(pub std::sync::Arc<PowerManagement>);

impl DevicePio for SleepControlPort {
    fn pio_read(&self, _base: PioAddress, _offset: u16, data: &mut [u8]) {
        data.fill(0); // Sleep status: never sleeping.
    }

    fn pio_write(&self, _base: PioAddress, offset: u16, data: &[u8]) {
        if offset == 0 && data.len() == 1 {
            self.0.write_sleep_control(data[0]);
        }
    }
}

/// The i8042 command/status port (0x64), reset only: 0xFE pulses the reset line. Reads report
/// an empty, ready controller so probing guests give up quickly.
pub struct I8042Port(pub std::sync::Arc<PowerManagement>);

impl DevicePio for I8042Port {
    fn pio_read(&self, _base: PioAddress, _offset: u16, data: &mut [u8]) {
        data.fill(0); // Status: output buffer empty, input buffer empty.
    }

    fn pio_write(&self, _base: PioAddress, offset: u16, data: &[u8]) {
        if offset == 0 && data == [0xfe] {
            self.0.raise(GuestEvent::Reboot);
        }
    }
}

/// The reset control register (0xCF9): bit 2 requests a reset.
pub struct ResetControlPort(pub std::sync::Arc<PowerManagement>);

impl DevicePio for ResetControlPort {
    fn pio_read(&self, _base: PioAddress, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn pio_write(&self, _base: PioAddress, offset: u16, data: &[u8]) {
        if offset == 0 && data.len() == 1 && data[0] & 0x4 != 0 {
            self.0.raise(GuestEvent::Reboot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn setup() -> (Arc<PowerManagement>, Arc<Mutex<Vec<GuestEvent>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let pm = Arc::new(PowerManagement::new(
            5,
            1,
            Box::new(move |e| s2.lock().unwrap().push(e)),
        ));
        (pm, seen)
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (pm, seen) = setup();
        SleepControlPort(pm.clone()).pio_write(PioAddress(0x3c0), 0, &[(5 << 2) | SLP_EN]);
        SleepControlPort(pm).pio_write(PioAddress(0x3c0), 0, &[5 << 2]); // no SLP_EN
        assert_eq!(*seen.lock().unwrap(), vec![GuestEvent::PowerOff]);
    }

    #[test]
    fn other_sleep_states_are_ignored() {
        let (pm, seen) = setup();
        SleepControlPort(pm).pio_write(PioAddress(0x3c0), 0, &[(3 << 2) | SLP_EN]);
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn reset_paths_reboot() {
        let (pm, seen) = setup();
        SleepControlPort(pm.clone()).pio_write(PioAddress(0x3c0), 0, &[1]);
        I8042Port(pm.clone()).pio_write(PioAddress(0x64), 0, &[0xfe]);
        I8042Port(pm.clone()).pio_write(PioAddress(0x64), 0, &[0xad]);
        ResetControlPort(pm).pio_write(PioAddress(0xcf9), 0, &[0x06]);
        assert_eq!(*seen.lock().unwrap(), vec![GuestEvent::Reboot; 3]);
    }
}
